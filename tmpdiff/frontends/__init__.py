"""Layer 10, frontends: what the command line and the app share (flags, refusals, words, plots, processes).
Imports studies, the store and every layer before them."""

from tmpdiff.cli.entry import run

run()

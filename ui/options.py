"""How the app is queued and launched."""

from .views import CSS, PAGE_JS

# Uploads are small (a schedule file at most): anything larger is refused before it is stored.
LAUNCH_OPTIONS = {"css": CSS, "js": PAGE_JS, "max_file_size": "1mb"}
# Images and searches set no queue limit of their own (admission.py bounds them per session and in all,
# with a wait estimate); everything else runs one at a time; at most 32 waiting, then "queue is full".
QUEUE_OPTIONS = {"default_concurrency_limit": 1, "max_size": 32}

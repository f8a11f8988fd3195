"""How the app is queued and launched."""

from .views import CSS, PAGE_JS

# Uploads are small (a schedule file at most): anything larger is refused before it is stored.
LAUNCH_OPTIONS = {"css": CSS, "js": PAGE_JS, "max_file_size": "1mb"}
# One image and one search run at a time (they queue apart); at most 32 waiting, then "queue is full".
QUEUE_OPTIONS = {"default_concurrency_limit": 1, "max_size": 32}

"""The web console: server-side pages (Jinja2) whose script talks only to the public /v1 API
with the signed-in user's bearer token, so the page can do nothing the API does not allow."""

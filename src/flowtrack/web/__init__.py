"""The HTTP listener (`flowtrack serve --http`): signed report downloads."""

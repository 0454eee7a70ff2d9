"""search: see converters/__init__.py for the layout."""

"""Datasets: uploads (streamed, checked, stored once by content), the list with the presets, previews."""

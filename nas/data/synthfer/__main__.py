"""``python -m nas.data.synthfer``: the entry point (``fernas synthfer``)."""
from nas.apps.synthfer import cli

cli()

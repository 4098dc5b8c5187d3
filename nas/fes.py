"""``nas.fes``: the public name of the FES matrix and its helpers, which live with the one
FER+ reader in :mod:`nas.data.ferplus` (users' scripts import ``fes_from_ferplus`` and
``DEFAULT_FES`` from here). ``python -m nas.fes`` is ``fernas fes``."""
from nas.data.ferplus import (DEFAULT_FES, FERPLUS_DISAGREEMENT_DECILES, FES_CLASSES, disagreement_from_votes,
                              fer_votes, fes_from_ferplus, fes_from_votes, fes_to_json, format_disagreement,
                              format_fes, load_fes)

__all__ = ["DEFAULT_FES", "FERPLUS_DISAGREEMENT_DECILES", "FES_CLASSES", "fes_from_ferplus", "fes_from_votes",
           "fer_votes", "disagreement_from_votes", "format_fes", "format_disagreement", "fes_to_json", "load_fes"]

if __name__ == "__main__":  # the entry point, not a dependency: python -m nas.fes
    from nas.apps.fes import cli

    cli()

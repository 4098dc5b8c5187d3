"""``nas.genotypes``: the public name of :mod:`nas.models.genotypes` (users' scripts and
notebooks import ``load_genotype`` from here)."""
from nas.models.genotypes import *  # noqa: F401,F403 - the public alias re-exports everything
from nas.models.genotypes import __all__  # noqa: F401

"""Architecture search: the supernet, the architecture step (first/second order), the SGAS
controller and the bilevel objective the engine's loop drives (:mod:`nas.search.searcher`)."""

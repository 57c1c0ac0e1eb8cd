"""Data: the files of the registered datasets (:mod:`.files`) and the domains a run adapts
between (:mod:`.domains`: the registry, the user's own images, the image sets of one run)."""

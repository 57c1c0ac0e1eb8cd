"""Experiments over saved runs: the paper's tables (:mod:`.reproduce`), summaries and the
label-free selection table (:mod:`.report`), and figures (:mod:`.plots`)."""

"""Metrics shared by training and evaluation: the vectorised functions (:mod:`.functions`) and
the vocabulary of names, kinds and directions (:mod:`.names`). Imports only numpy."""

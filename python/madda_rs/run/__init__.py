"""The machinery of one run: what a run is and its folder (:mod:`.folder`), named random streams
(:mod:`.streams`), the device and the processes of a torchrun job (:mod:`.processes`), and the
epoch loop that drives any stage (:mod:`.loop`). :func:`madda_rs.training.train` puts them
together."""

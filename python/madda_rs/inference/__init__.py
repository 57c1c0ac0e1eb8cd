"""Using a finished run: labels for new images (:mod:`.predict`, ``madda-rs predict``) and a
folder that predicts without madda_rs's training code (:mod:`.export`, ``madda-rs export``).
The prediction code itself is :mod:`.standalone`, which the export ships verbatim."""

"""The demo: a deterministic corpus of images (demo.corpus) to run the whole pipeline on."""

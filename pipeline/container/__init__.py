"""Submission containers: a run becomes the image an organiser runs on hidden test data.

* ``contracts``  the organisers' container contracts as data (mounts, inputs, outputs, their
                 ``docker run`` command lines), each fact with its source; no torch
* ``jobs``       what one contract's entry point registers: the pairs it reads from the mounts,
                 the checks before any work, the field files it writes
* ``entry``      the image's entry point (``python -m pipeline.container.entry``): reads exactly
                 what the organiser mounts, registers every pair, writes the evaluator's files
* ``build``      the ``container`` command on the host: stage a minimal build context (code + the
                 run's configuration and weights), build the Dockerfile's ``submission`` target,
                 ``docker save | gzip``, write what the organiser asks to hand in
* ``handin``     the check run of a built image with the organiser's command line, its
                 measurements, and the hand-in files (manifest, LUMIR's README.txt)

May import: ``pipeline.prediction`` (the prediction path of one pair), ``pipeline.training``
(OncoReg's ``train.sh``), ``pipeline.config`` and ``pipeline.distributed``; never the demo.
"""

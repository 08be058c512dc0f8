"""Learn2Reg submission pipeline around LapIRN.

Sub-packages, each one concern, imports running one way (stages use the model and the data
layer, never the reverse; nothing imports the demo; ``tests/pipeline/test_layout.py`` holds it):

* ``model/``      LapIRN, losses, torch side of the field contract, checkpoints, instance optimisation,
                  the LapIRN authors' checkpoints (``authors``)
* ``affine/``     NGF, rigid/affine registration and the ``align`` stage
* ``data/``       preprocessing, ``validate``, ``summary``
* ``training/``   the ``train`` stage, ``import-weights`` (the authors' weights as a run folder)
* ``prediction/`` the ``predict`` stage
* ``container/``  submission images: the organisers' contracts, the image's entry point, ``container``
* ``demo/``       phantoms, demo tasks and the demo job

At the top: the command line (``cli``), the run configuration (``config``) and the
``torchrun`` helpers (``distributed``). Run ``python -m pipeline --help``.

May import: ``learn2reg`` (the challenge's formats, everywhere), torch, SimpleITK and the scientific
stack; ``evaluation`` (numpy only, the judge) only where a stage really scores: validation during
training, the affine stage's landmark error, reports, the demo job (``tests/test_layout.py``).
"""

"""The Learn2Reg challenge's formats: the ground floor that ``pipeline`` and ``evaluation`` stand on.

* ``io``           the one I/O boundary: NIfTI (nibabel), point CSVs, JSON, atomic writes, ``DataError``
* ``errors``, ``faults``, ``writers``  what every command reports with exit code 1 (bad input, a write the
                   machine refused: full disk, permission, read-only); one writer per folder (a lock that
                   dies with its process) and temporaries removed only when their writer is dead
* ``contract``     the displacement-field contract (axis order, voxel units, pull direction, file names,
                   normalised <-> voxel, affine -> field, composition, resampling)
* ``dataset``      ``{TASK}_dataset.json``: reading, checking and writing it
* ``task``         a task folder of either generation as one typed model (``Task``, ``Case``, ``Pair``,
                   ``Layout``); ``task2020`` reads the 2020 layout
* ``segmentation`` the value rules for label maps and masks
* ``submission``   submission formats: finding, checking and loading fields; the runtime manifest
* ``eval_config``  the organisers' ``{TASK}_VAL_evaluation_config.json``, read or derived from a task
* ``rules``        each organiser's evaluator rules as data (file names, layouts, point folders,
                   aggregation), which of them a task folder follows, and the file name a prediction
                   writes under them
* ``package``      the ``package`` command: a submission folder checked against its task, zipped as
                   its organisers ask
* ``cli``, ``progress``  the shared shape of the command lines and their progress output

May import: numpy, scipy, nibabel, tqdm and the standard library; never torch, ``pipeline`` or
``evaluation`` (``tests/test_layout.py`` holds it), so the evaluator's slim image needs no torch.
"""

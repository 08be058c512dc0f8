"""The data layer: preprocessing (and its cache), the ``validate`` and ``summary`` stages of task folders.

May import ``pipeline.data``, ``pipeline.config`` and ``evaluation``; never the model or another stage.
"""

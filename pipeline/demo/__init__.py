"""The embedded demo: synthetic phantoms, the four demo tasks, and the demo job (every stage end to end).

May import anything; nothing outside ``pipeline.demo`` imports it.
"""

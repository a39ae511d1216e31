"""Conversion: from an input image to a confidential one.

``plan`` decides (which executable, which code under which roots, which regions) from the image
and the options before any byte is written; ``select``, ``recipe``, ``codepaths`` and
``libraries`` find the service's code; ``pipeline`` runs the conversion (embedfs, measurement,
volumes, ``newlayers``, the ``runtime`` layer) and hands the results to ``sconify.outputs``.
"""

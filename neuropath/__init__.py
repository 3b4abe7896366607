"""neuropath: transfer-learning classification of 2-D brain MRI slices.

The model lives in the top-level module ``neuropathology_model``; this package
holds the class names, configuration, image files and data checks, data
pipeline, training (resumable), callbacks, evaluation reports, report
comparison, batch prediction (DICOM included) and the ``neuropath`` command
line.
"""

__version__ = "0.1.0"

"""The bioimage.io model runtime: validate a model package and run it on images.

``package`` reads a package (``rdf.yaml`` format 0.4 or 0.5, with ``bioimageio.spec``, local
files only) into a ``plan.ModelPlan`` and maps its tensors to Image interfaces; ``predict``
runs a plan on image files with tiling; ``python -m batch_runner.bioimageio`` is the command
line. Needs the ``bioimageio`` extra (bioimageio.spec, numpy, SimpleITK, onnxruntime); nothing
here may be imported on the API's import path.
"""

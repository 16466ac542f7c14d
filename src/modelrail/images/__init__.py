"""Container images without Docker: a Debian base, the inference, controller and load-test
images, their SBOMs, and running them the way the Pulumi program's pod specs say.

  podman.py      the only module that runs podman (with runc)
  base.py        the base image from Debian's packages (debootstrap), cached by recipe
  wheelhouse.py  the Python packages of an image, downloaded on the host, hashes checked
  build.py       the three images: build contexts, Containerfiles, labels, content cache
  sbom.py        the CycloneDX bill of materials, written inside the image (stdlib only)
  podspec.py     a Deployment's pod spec as `podman run` arguments (pure), and probes

Kept free of heavy imports: `sbom` runs inside the images.
"""

"""mslesion: classify MS lesions from 3D MRI as remyelinating or demyelinating.

The one version string of the package (pyproject reads it); every run folder and output records it. Bump it
when a file format or an output name changes, and say so in CHANGELOG.md.
"""

__version__ = "0.4.7"

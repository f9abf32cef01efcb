"""mslesion: classify MS lesions from 3D MRI as remyelinating or demyelinating."""

__version__ = "0.1.0"

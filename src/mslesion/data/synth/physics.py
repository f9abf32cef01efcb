"""MRI physics for the synthetic cohort: dipole field model, QSM inversion, smooth fields and Rician noise.

Shared by the patch generator (`synth.py`) and the whole-subject generator (`synth_volumes.py`), so that a
lesion looks the same in a patch and in a volume.

Conventions: arrays are indexed (i, j, k) = (x, y, z) in RAS order, B0 is along z (the last axis), and
susceptibility and field are in ppm (field as a fraction of B0). All k-space arrays use the `rfftn` half
layout (last axis of length n // 2 + 1) so that one real FFT pair per image is enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft

# Threads per FFT; small 3D transforms gain little from more (and the machines here have 2 cores).
FFT_WORKERS = 2


def kspace_grid(
    shape: tuple[int, int, int], voxel_size_mm: tuple[float, float, float] | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spatial frequencies (cycles/mm) along x, y, z, broadcastable to the rfftn half layout of `shape`."""
    vs = np.broadcast_to(np.asarray(voxel_size_mm, dtype=np.float64), (3,))
    kx = scipy.fft.fftfreq(shape[0], d=vs[0])[:, None, None]
    ky = scipy.fft.fftfreq(shape[1], d=vs[1])[None, :, None]
    kz = scipy.fft.rfftfreq(shape[2], d=vs[2])[None, None, :]
    return kx, ky, kz


@lru_cache(maxsize=8)
def dipole_kernel(
    shape: tuple[int, int, int], voxel_size_mm: tuple[float, float, float] | float = 1.0
) -> np.ndarray:
    """Unit dipole kernel D(k) = 1/3 - kz^2 / |k|^2 in the rfftn half layout, with D(0) = 0.

    The field perturbation (as a fraction of B0 along z) of a susceptibility map chi is
    IFFT(D * FFT(chi)) (Salomir et al. 2003; Marques & Bowtell 2005). D(0) is undefined; setting it to 0
    is the usual convention and means the field, and any QSM reconstructed from it, has zero mean: QSM is
    always relative to a reference tissue. Along kz D = -2/3, perpendicular to it D = +1/3.
    """
    kx, ky, kz = kspace_grid(shape, voxel_size_mm)
    k2 = kx**2 + ky**2 + kz**2
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = 1.0 / 3.0 - kz**2 / k2
    kernel[0, 0, 0] = 0.0
    return _read_only(kernel.astype(np.float32))


@lru_cache(maxsize=8)
def tkd_inverse_for(
    shape: tuple[int, int, int], voxel_size_mm: tuple[float, float, float] | float, threshold: float
) -> np.ndarray:
    return _read_only(tkd_inverse(dipole_kernel(shape, voxel_size_mm), threshold))


def tkd_inverse(kernel: np.ndarray, threshold: float) -> np.ndarray:
    """Truncated k-space division (TKD; Shmueli et al. 2009): 1/D, with |D| < threshold clipped to
    sign(D) * threshold. Thresholds of 0.1-0.2 are typical; the clipping near the magic-angle cone is
    what gives real QSM its streaking and blurring (and a susceptibility underestimate)."""
    clipped = np.where(np.abs(kernel) < threshold, np.where(kernel < 0, -threshold, threshold), kernel)
    inverse = 1.0 / clipped
    inverse[0, 0, 0] = 0.0  # the mean susceptibility is not measurable (D(0) = 0)
    return inverse.astype(np.float32)


def complex_white_noise(rng: np.random.Generator, kshape: tuple[int, ...], n_voxels: int) -> np.ndarray:
    """Spectrum of real white noise with unit voxel variance, drawn directly in k-space (saves an FFT).

    Hermitian symmetry is not enforced on the self-conjugate planes; irfftn then keeps their real part,
    which still gives real, Gaussian, nearly white noise: good enough for synthetic data.
    """
    pairs = rng.standard_normal((*kshape, 2), dtype=np.float32)
    pairs *= np.float32(np.sqrt(n_voxels / 2.0))
    return pairs.view(np.complex64)[..., 0]


@lru_cache(maxsize=8)
def lowpass(
    shape: tuple[int, int, int], voxel_size_mm: tuple[float, float, float] | float, scale_mm: float
) -> np.ndarray:
    """Gaussian low-pass filter (rfftn half layout) normalised so filtered unit white noise has unit std."""
    kx, ky, kz = kspace_grid(shape, voxel_size_mm)
    # A Gaussian blur of standard deviation s (mm) multiplies the spectrum by exp(-2 pi^2 s^2 k^2).
    gain = np.exp(-2.0 * np.pi**2 * scale_mm**2 * (kx**2 + ky**2 + kz**2))
    # Parseval: the variance of filtered unit white noise is the mean of |gain|^2 over the full spectrum.
    weights = np.full(gain.shape[-1], 2.0)
    weights[0] = 1.0
    if shape[2] % 2 == 0:
        weights[-1] = 1.0
    power = float((gain**2 * weights).sum() / np.prod(shape))
    return _read_only((gain / np.sqrt(power)).astype(np.float32))


def smooth_random_field(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    voxel_size_mm: tuple[float, float, float] | float,
    scale_mm: float,
    amplitude: float,
) -> np.ndarray:
    """A smooth Gaussian random field with standard deviation `amplitude` and correlation length ~scale_mm
    (tissue texture, bias fields)."""
    spectrum = complex_white_noise(rng, (shape[0], shape[1], shape[2] // 2 + 1), int(np.prod(shape)))
    spectrum *= lowpass(shape, voxel_size_mm, scale_mm) * np.float32(amplitude)
    return scipy.fft.irfftn(spectrum, s=shape, workers=FFT_WORKERS).astype(np.float32)


def simulate_qsm(
    chi_ppm: np.ndarray,
    voxel_size_mm: float,
    field_noise_ppm: float,
    tkd_threshold: float,
    rng: np.random.Generator,
    texture_ppm: float = 0.0,
    texture_scale_mm: float = 2.0,
) -> np.ndarray:
    """QSM (ppm) as a scanner would give it: dipole forward model of chi, white field noise, TKD inversion.

    `texture_ppm` adds a smooth Gaussian random texture (correlation ~texture_scale_mm) to chi, as white
    matter is not uniform. Texture and field noise are both Gaussian with real spectral filters, so their
    sum is drawn as one white spectrum filtered by sqrt(|D T|^2 + sigma^2): one draw instead of two, the
    same distribution.
    """
    shape = chi_ppm.shape
    kernel = dipole_kernel(shape, voxel_size_mm)
    field_k = scipy.fft.rfftn(chi_ppm.astype(np.float32, copy=False), workers=FFT_WORKERS)
    field_k *= kernel
    texture = kernel * lowpass(shape, voxel_size_mm, texture_scale_mm) * np.float32(texture_ppm)
    noise_filter = np.sqrt(texture * texture + np.float32(field_noise_ppm) ** 2)
    field_k += complex_white_noise(rng, field_k.shape, int(np.prod(shape))) * noise_filter
    field_k *= tkd_inverse_for(shape, voxel_size_mm, tkd_threshold)
    return scipy.fft.irfftn(field_k, s=shape, workers=FFT_WORKERS).astype(np.float32)


def rician_magnitude(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise: Rician noise, as in any magnitude MR image."""
    real = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    imag = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return np.sqrt(real * real + imag * imag).astype(np.float32)



# ---- geometry: where tissue is, on a voxel grid -------------------------------------------------------


@dataclass(frozen=True)
class SimulationGrid:
    """An isotropic voxel grid: voxel (i, j, k) sits at origin_mm + (i, j, k) * voxel_mm."""

    shape: tuple[int, int, int]
    voxel_mm: float
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def box(self, centre_mm: np.ndarray, radius_mm: float) -> tuple[slice, slice, slice] | None:
        """Voxels within `radius_mm` of `centre_mm` along each axis (None if outside the grid)."""
        lo = np.floor((np.asarray(centre_mm) - radius_mm - self.origin_mm) / self.voxel_mm).astype(int)
        hi = np.ceil((np.asarray(centre_mm) + radius_mm - self.origin_mm) / self.voxel_mm).astype(int) + 1
        lo, hi = np.maximum(lo, 0), np.minimum(hi, self.shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]

    def open_offsets(
        self, box: tuple[slice, slice, slice] | None, centre_mm: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Position (mm) relative to `centre_mm` along x, y, z of the voxels of `box` (None: the whole
        grid), as three broadcastable arrays."""
        box = box or tuple(slice(0, n) for n in self.shape)  # type: ignore[assignment]
        axes = [
            np.arange(s.start, s.stop, dtype=np.float32) * np.float32(self.voxel_mm)
            + np.float32(self.origin_mm[a] - centre_mm[a])
            for a, s in enumerate(box)  # type: ignore[arg-type]
        ]
        return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]

    def offsets(self, box: tuple[slice, slice, slice], centre_mm: np.ndarray) -> np.ndarray:
        """Position (mm) of each voxel of `box` relative to `centre_mm`, shape (3, *box shape)."""
        return np.stack(np.broadcast_arrays(*self.open_offsets(box, centre_mm)))


def unit_vector(rng: np.random.Generator) -> np.ndarray:
    """A direction uniformly distributed on the sphere."""
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed rotation matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def partial_volume(signed_distance_mm: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Fraction of each voxel inside the surface: a one-voxel linear ramp across it (0.5 on the surface)."""
    return np.clip(0.5 - signed_distance_mm / np.float32(voxel_mm), 0.0, 1.0)


def paramagnetic_rim(
    signed_distance_mm: np.ndarray, offsets_mm: np.ndarray, thickness_mm: float,
    gap_direction: np.ndarray, gap_cos: float, voxel_mm: float,
) -> np.ndarray:
    """Weight (0..1) of a rim band of `thickness_mm` just inside the lesion edge, open where the direction
    from the centre is within the cap {u . gap_direction > gap_cos}: iron rims of PRLs usually cover most,
    not all, of the lesion edge (Absinta et al. 2016; Rahmanzadeh et al. 2022)."""
    inside_band = partial_volume(signed_distance_mm, voxel_mm)
    inside_band *= np.clip(0.5 + (signed_distance_mm + np.float32(thickness_mm)) / np.float32(voxel_mm), 0, 1)
    norm = np.maximum(np.sqrt((offsets_mm**2).sum(axis=0)), 1e-6)
    cos_angle = np.tensordot(gap_direction.astype(np.float32), offsets_mm, axes=1) / norm
    outside_gap = np.clip((np.float32(gap_cos) - cos_angle) / np.float32(0.15), 0.0, 1.0)  # soft gap edge
    return inside_band * outside_gap


def vein_tube(
    offsets_mm: tuple[np.ndarray, np.ndarray, np.ndarray],
    direction: np.ndarray,
    radius_mm: float,
    voxel_mm: float,
) -> np.ndarray:
    """Volume fraction of a straight vein (a cylinder of `radius_mm` through the origin of `offsets_mm`,
    three broadcastable coordinate arrays) in each voxel.

    Veins are often thinner than a voxel, so the cylinder is drawn as a Gaussian profile that conserves
    its cross-section area (pi r^2): a thin vein is a faint line, not a missing one.
    """
    x, y, z = offsets_mm
    along = x * np.float32(direction[0]) + y * np.float32(direction[1]) + z * np.float32(direction[2])
    distance2 = np.maximum(x * x + y * y + z * z - along * along, 0.0)
    sigma2 = max(radius_mm**2 / 2.0, (voxel_mm / 2.0) ** 2)
    fraction = np.zeros(distance2.shape, dtype=np.float32)
    near = distance2 < 9.0 * sigma2
    peak = np.float32(radius_mm**2 / (2.0 * sigma2))
    fraction[near] = peak * np.exp(-distance2[near] / np.float32(2 * sigma2))
    return fraction

def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # cached: a caller must not change it for the next one
    return array

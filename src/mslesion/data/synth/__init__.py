"""The synthetic cohort, the project's default data: physics (dipole model, QSM inversion, FLAIR noise),
lesions (Table 1 classes, geometry, rendering), lesion patches (`cohort`) and whole-subject volumes (`volumes`)."""

from mslesion.config import SynthConfig
from mslesion.data.synth.cohort import generate_cohort, write_cohort
from mslesion.data.synth.volumes import generate_subject_volumes, subject_shape

__all__ = ["SynthConfig", "generate_cohort", "generate_subject_volumes", "subject_shape", "write_cohort"]

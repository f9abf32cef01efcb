"""Figures of the paper (Šišić, "Neural Network Based Classification of Brain Lesions") we compare against."""

# Table 3: test accuracy (%) per channel combination, on 160 remyelinating + 318 demyelinating test lesions.
PAPER_TABLE3 = {
    "flair": 70.09, "qsm": 89.31, "mask": 69.22, "flair,qsm": 88.59,
    "flair,mask": 71.01, "qsm,mask": 89.45, "flair,qsm,mask": 89.00,
}
PAPER_BASELINE = 66.66

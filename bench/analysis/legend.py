"""The prose printed under a report's tables: what each column means."""

LEGEND = """\
Columns: *Papyan et al.*, *DIP (Table 1)*: the paper's Table 1 (dB). *Seed repro.*: the independent
reproduction by Peschl et al. *This run*: PSNR of the raw network output against the ground truth
(whole image or crop, data range 1, known pixels not pasted back), mean ± sample std over seeds; *n* seeds
and, with several, their *min to max*. Mean row: the mean over images, ± the sample std over seeds of
each seed's mean over the images (the spread of the table's headline number); n and min to max over
all records.
*Δ*: this run's mean minus Table 1's DIP value. *Paste-back*: PSNR after the observed pixels are
copied into the output. *ms/iter*: median time of one training iteration (warm-up excluded).
*Backtracks*: times the parameters were restored after a >5 dB drop, summed over seeds."""


EXTRA_LEGEND = """*Best (oracle stop)*: the highest PSNR seen at an evaluation point during training and the (median)
iteration where it was reached: what stopping at the right moment would give, with the ground truth
as oracle. *EMA of output*: PSNR of the exponential moving average (weight 0.99) of the training
outputs. *Interp.*: SciPy's nearest / linear interpolation of the missing pixels from the same mask, the
floor any prior must beat. *DIP published*, *Papyan published*: the authors' published outputs (made
with their own masks) scored here on the same crop with the same PSNR. Further columns: other runs of
the same images, crops, masks and iterations with a different recipe (mean ± std over their seeds)."""



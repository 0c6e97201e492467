"""Statistics: small, pure and exact on counts, shared by every signal and verdict.

- :mod:`.proportions`: Wilson and Clopper-Pearson bounds of a rate;
- :mod:`.sequential`: anytime-valid confidence sequences for canary and shadow comparisons;
- :mod:`.ranks`: Mann-Whitney U, Hodges-Lehmann shift and quantile bounds of binned samples;
- :mod:`.robust`: robust location and scale of a baseline history;
- :mod:`.distributions`: distances, drift tests and shape statistics of histograms.

Standard library only.
"""

"""Input side of pretraining: media sources -> codec bytes -> tokens -> packed batches."""

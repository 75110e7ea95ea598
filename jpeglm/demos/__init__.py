"""The demos behind `make demo` (digits, photos, video) and the digit scorer that reads their
samples. Needs the `demo` extra (scikit-learn)."""

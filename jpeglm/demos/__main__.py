"""`python -m jpeglm.demos --demo digits --out DIR`: what `make demo` runs."""
from jpeglm.demos.run import main

main()

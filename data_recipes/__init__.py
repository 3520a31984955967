"""One runnable module per public dermatology format -> dermvlm's common records.

    python -m data_recipes.derm1m --csv Derm1M.csv --images Derm1M/ --out data/derm1m
"""

"""`report`: plots and tables from run folders and result files (docs/design.md §2).

runs.py reads and checks the inputs, numbers.py picks each one's key
numbers, figures.py draws, markdown.py writes report.md, and build.py puts
them together into a folder that appears whole or not at all.
"""

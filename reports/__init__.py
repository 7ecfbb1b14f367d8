"""The generated robustness report and the other generated docs: tables, figures, sample images.

Imports ``models`` and ``training``; neither imports it back (and ``service`` never imports either).
"""

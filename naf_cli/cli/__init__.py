"""Thin command-line layer over the library."""

from naf_cli import openmp_spin

openmp_spin.shorten_spin()  # first, before any command imports torch: libgomp reads it once

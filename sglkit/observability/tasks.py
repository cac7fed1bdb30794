"""invoke obs.*"""

from invoke import Collection

from sglkit.observability.report import compare, report

ns = Collection("obs", report, compare)

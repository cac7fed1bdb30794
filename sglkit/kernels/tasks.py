"""invoke kernels.*"""

from invoke import Collection

ns = Collection("kernels")

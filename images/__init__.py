"""The course's images (the reference image notebook 02 replicates); installed as `sdlab.images`, so a
notebook finds them where only the package is installed (Colab)."""

"""Training-set sanitizers (``Sanitizer``): which samples are poison?"""
from .activation_clustering import ActivationClustering
from .pca_outliers import PCAOutliers
from .retrain import Sanitized, kept_subset, retrain, sanitize_and_retrain
from .spectral import SpectralSignatures

SANITIZERS: dict[str, type] = {}
SANITIZERS["pca-outliers"] = PCAOutliers
SANITIZERS["spectral-signatures"] = SpectralSignatures
SANITIZERS["activation-clustering"] = ActivationClustering

__all__ = ["SANITIZERS", "PCAOutliers", "SpectralSignatures", "ActivationClustering", "Sanitized",
           "kept_subset", "retrain", "sanitize_and_retrain"]

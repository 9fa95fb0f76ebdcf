from .knn import evaluate_knn, knn_pipeline, knn_top1

__all__ = ['evaluate_knn', 'knn_pipeline', 'knn_top1']

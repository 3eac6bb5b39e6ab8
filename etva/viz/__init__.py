"""Pictures: matplotlib figures of a trained model (figures) and the HTML contact sheet of search results."""

"""The study's comparison: XGBoost on handcrafted features, the CNNs, AST and federated
training, all on one cache, one split and one set of metrics (`claudio-train compare`)."""

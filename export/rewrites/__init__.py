"""The export rewrites of GlimmerNet / TakuNet, one per module: each builds new modules that compute
what the training modules compute (exact up to fp32 rounding) in a form whose traced ONNX graph is
small and static, and leaves the training modules untouched. Each has a parity test of its own
(``tests/export/test_rewrite_<name>.py``); :mod:`glimmer.export.deploy_model` assembles them.

``fold_bn``       conv + BatchNorm -> conv; ReLU6 as ``Clip(0, 6)``.
``dilation``      the grouped dilated depthwise conv -> one depthwise conv per stream of channels.
``output_slice``  a conv's output channels as a conv of their own: the stem cut into streams.
``interleave``    FeatureMapsRecomb + interleave -> one constant Reshape/Transpose/Concat chain.
``grn``           GRN through GlobalAveragePool, ``+ beta`` as unit 1x1 depthwise convs per stream.
``streams``       the stream convention the others share.
"""

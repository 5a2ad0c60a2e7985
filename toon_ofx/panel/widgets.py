"""Small display widgets: images from arrays or PNG bytes, and the status line."""
from __future__ import annotations

import math
from typing import Any, Optional

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Qt


def to_qimage(image: Any) -> QtGui.QImage:
    """A QImage from PNG bytes or an HxWx3/4 uint8 RGB(A) array (copied)."""
    if isinstance(image, (bytes, bytearray)):
        qimage = QtGui.QImage.fromData(bytes(image))
        if qimage.isNull():
            raise ValueError("not a readable image")
        return qimage
    import numpy as np

    array = np.ascontiguousarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.dtype != np.uint8:
        array = (array / 257).astype(np.uint8) if array.dtype == np.uint16 else array.astype(np.uint8)
    h, w, c = array.shape
    fmt = QtGui.QImage.Format_RGBA8888 if c == 4 else QtGui.QImage.Format_RGB888
    return QtGui.QImage(array.data, w, h, c * w, fmt).copy()


class ImageView(QtWidgets.QLabel):
    """A label that keeps an image scaled to its size."""

    def __init__(self, title: str, parent=None):
        super().__init__(parent)
        self.title = title
        self.image: Optional[QtGui.QImage] = None
        self.setAlignment(Qt.AlignCenter)
        self.setMinimumSize(240, 180)
        self.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Expanding)
        self.setStyleSheet("QLabel { background: #1e1e1e; color: #9a9a9a; border: 1px solid #333; }")
        self.setText(title)

    def set_image(self, image: Optional[QtGui.QImage], text: str = "") -> None:
        self.image = image
        if image is None:
            self.setPixmap(QtGui.QPixmap())
            self.setText(text or self.title)
        else:
            self._rescale()

    def _rescale(self) -> None:
        if self.image is not None:
            pix = QtGui.QPixmap.fromImage(self.image)
            self.setPixmap(pix.scaled(self.size() - QtCore.QSize(4, 4), Qt.KeepAspectRatio, Qt.SmoothTransformation))

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        super().resizeEvent(event)
        self._rescale()


class StatusLine(QtWidgets.QTextEdit):
    """The window's one status message: wrapped (long paths and URLs too), selectable, never cut off.

    The box grows with the message up to MAX_LINES lines, then scrolls; errors are red.
    """

    MAX_LINES = 16

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("status")
        self.setReadOnly(True)
        self.setTextInteractionFlags(Qt.TextSelectableByMouse | Qt.TextSelectableByKeyboard)
        self.setFrameShape(QtWidgets.QFrame.NoFrame)
        self.setWordWrapMode(QtGui.QTextOption.WrapAtWordBoundaryOrAnywhere)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        self.set_message("")

    def text(self) -> str:
        return self.toPlainText()

    def set_message(self, text: str, error: bool = False) -> None:
        self.setPlainText(text)
        self.setStyleSheet("QTextEdit { background: transparent; %s}" % ("color: #d04040; " if error else ""))
        self._fit()

    def _fit(self) -> None:
        """As tall as the wrapped message (at least one line, at most MAX_LINES)."""
        doc = self.document()
        doc.setTextWidth(self.viewport().width())
        line, pad = self.fontMetrics().lineSpacing(), 2 * doc.documentMargin()
        height = min(max(doc.size().height(), line + pad), self.MAX_LINES * line + pad)
        frame = self.contentsMargins().top() + self.contentsMargins().bottom()
        self.setFixedHeight(math.ceil(height) + frame)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        super().resizeEvent(event)
        self._fit()

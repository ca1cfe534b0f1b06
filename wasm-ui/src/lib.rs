//! Placeholder: the popup is built by the extension work.

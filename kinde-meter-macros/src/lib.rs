//! The `#[meter]` attribute of `kinde-meter` (placeholder until the macro lands).
use proc_macro::TokenStream;

/// Meters a function (placeholder: returns the item unchanged).
#[proc_macro_attribute]
pub fn meter(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}

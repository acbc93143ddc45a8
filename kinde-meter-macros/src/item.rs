//! Classifies the item `#[meter]` is on: a sync fn, an `async fn`, a fn returning a future,
//! or something `#[meter]` cannot meter.
//!
//! Every dependency on the shape of syn's syntax tree lives here; the expansion only sees
//! token streams.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::visit_mut::{self, VisitMut};
use syn::{
    AngleBracketedGenericArguments, AttrStyle, Attribute, Block, Expr, ExprAsync, ExprBreak,
    ExprCall, ExprMacro, Ident, Item, Lifetime, PathArguments, ReturnType, Signature, Stmt, Token,
    TraitItemFn, Type, TypeInfer, TypeParamBound, Visibility, token,
};

/// A function `#[meter]` can meter.
pub(crate) struct MeterFn {
    outer_attrs: Vec<Attribute>,
    inner_attrs: Vec<Attribute>,
    vis: Visibility,
    sig: Signature,
    body: Block,
    /// What the body (or the future it builds) evaluates to.
    output: Output,
    pub(crate) shape: Shape,
    /// For [`Shape::ReturnsFuture`]: whether the future is returned in a `Pin<Box<..>>`
    /// (so a wrapped future is boxed again) rather than as an `impl Future`.
    boxed: bool,
}

/// How the function runs its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A plain function: the body runs during the call.
    Sync,
    /// An `async fn`: the body runs when the returned future is polled.
    Async,
    /// A plain function that returns a future: its return type is `impl Future<..>` or
    /// `Pin<Box<dyn Future<..>>>` (or `BoxFuture<..>`), or its last expression is an
    /// `async` block or a `Box::pin(..)`. Every future it returns is metered (the one of
    /// its last expression and those of its `return`s), not the function.
    ReturnsFuture,
}

/// What a function's body, or the future it builds, evaluates to.
enum Output {
    /// `()`: no return type.
    Unit,
    /// This type, as written.
    Type(Box<Type>),
    /// A returned future whose `Output` could not be read from the signature.
    Unknown,
}

/// A future that a [`Shape::ReturnsFuture`] function returns, to be wrapped.
pub(crate) enum Returned<'a> {
    /// An `async` block written there (alone, or as the argument of `Box::pin`): the
    /// metering can go inside it.
    Block(InnerFuture<'a>),
    /// Any other expression whose type is a future.
    Future(TokenStream),
}

/// An `async` block that a [`Shape::ReturnsFuture`] function returns.
pub(crate) struct InnerFuture<'a>(&'a ExprAsync);

impl InnerFuture<'_> {
    /// The block as written.
    pub(crate) fn tokens(&self) -> TokenStream {
        self.0.to_token_stream()
    }

    /// The block with `prelude` run before its statements.
    pub(crate) fn with_prelude(&self, prelude: TokenStream) -> TokenStream {
        let ExprAsync {
            attrs,
            async_token,
            capture,
            block,
            ..
        } = self.0;
        let mut tokens = quote!(#(#attrs)* #async_token #capture);
        let stmts = &block.stmts;
        block.brace_token.surround(&mut tokens, |tokens| {
            prelude.to_tokens(tokens);
            tokens.extend(quote!(#(#stmts)*));
        });
        tokens
    }

    /// The block as written, except that its `async` keyword and braces sit at `at`, so
    /// an error about its output is reported there. The statements keep their spans, and
    /// there is no identifier to move.
    pub(crate) fn respanned(&self, at: Span) -> TokenStream {
        let mut block = self.0.clone();
        block.async_token.span = at;
        if let Some(capture) = &mut block.capture {
            capture.span = at;
        }
        block.block.brace_token = token::Brace(at);
        block.to_token_stream()
    }
}

impl MeterFn {
    /// The outer attributes, visibility and signature, exactly as written.
    pub(crate) fn head(&self) -> TokenStream {
        let MeterFn {
            outer_attrs,
            vis,
            sig,
            ..
        } = self;
        quote!(#(#outer_attrs)* #vis #sig)
    }

    /// The body's braces as written, so the function keeps its spans (and the user's
    /// lints on it keep firing).
    pub(crate) fn brace(&self) -> token::Brace {
        self.body.brace_token
    }

    /// The body's inner attributes (`#![allow(..)]`), to go at the top of the new body.
    pub(crate) fn inner_attrs(&self) -> TokenStream {
        let attrs = &self.inner_attrs;
        quote!(#(#attrs)*)
    }

    /// The user's block, exactly as written, to nest inside the new body.
    pub(crate) fn block(&self) -> TokenStream {
        nested(self.body.clone())
    }

    /// The user's block as an expression whose value is what the function returns:
    /// every `return` that leaves this function becomes `break #label`, and the block is
    /// labeled `#label` (only if it has such a `return`). `return`s inside closures,
    /// `async` blocks and nested items belong to those and are kept.
    pub(crate) fn block_with_returns_as_breaks(&self, label: &Lifetime) -> TokenStream {
        let mut block = self.body.clone();
        let mut rewrite = ReturnsToBreaks {
            label,
            rewritten: false,
        };
        rewrite.visit_block_mut(&mut block);
        if rewrite.rewritten {
            // No lint asks to unwrap a labeled block.
            quote!(#label: #block)
        } else {
            nested(block)
        }
    }

    /// The type the body evaluates to (for a [`Shape::ReturnsFuture`], the future's
    /// `Output`), with every `impl Trait` replaced by `_` so it can annotate a `let`;
    /// `()` when the function returns nothing. Its tokens keep the user's spans, so a
    /// check on it is reported on the return type.
    pub(crate) fn erased_output(&self) -> TokenStream {
        match &self.output {
            Output::Type(ty) => {
                let mut ty = (**ty).clone();
                EraseImplTrait.visit_type_mut(&mut ty);
                ty.to_token_stream()
            }
            Output::Unit => quote!(()),
            Output::Unknown => quote!(_),
        }
    }

    /// Whether the function (or the future it returns) evaluates to `()`.
    pub(crate) fn returns_unit(&self) -> bool {
        match &self.output {
            Output::Unit => true,
            Output::Type(ty) => matches!(&**ty, Type::Tuple(t) if t.elems.is_empty()),
            Output::Unknown => false,
        }
    }

    /// The name of the function, for messages.
    pub(crate) fn name(&self) -> String {
        self.sig.ident.to_string()
    }

    /// The user's block with every future it returns (its last expression and the value
    /// of each `return` that leaves this function) replaced by `wrap(future)`. For a
    /// `Box::pin(x)`, `x` is wrapped, so the future is boxed once. Any other value of a
    /// boxed return type is first bound to a `let` of that type (so it converts, and its
    /// type is inferred, as before), then wrapped and boxed again.
    pub(crate) fn block_with_futures(
        &self,
        mut wrap: impl FnMut(Returned<'_>) -> TokenStream,
    ) -> TokenStream {
        let mut block = self.body.clone();
        let mut exits = Exits {
            func: self,
            wrap: &mut wrap,
        };
        // `return`s first: a `return` in the last expression is then already wrapped.
        let mut returns = WrapReturns(&mut exits);
        returns.visit_block_mut(&mut block);
        if let Some(tail) = tail_mut(&mut block) {
            let tail_expr = std::mem::replace(tail, Expr::Verbatim(TokenStream::new()));
            *tail = exits.wrap_exit(tail_expr, true);
        }
        nested(block)
    }
}

/// Wraps the futures a [`Shape::ReturnsFuture`] function returns.
struct Exits<'a, 'w> {
    func: &'a MeterFn,
    wrap: &'w mut dyn FnMut(Returned<'_>) -> TokenStream,
}

impl Exits<'_, '_> {
    /// The expression a `return` (`tail == false`) or the last expression hands back,
    /// wrapped.
    fn wrap_exit(&mut self, exit: Expr, tail: bool) -> Expr {
        if matches!(exit, Expr::Return(_)) {
            // Already wrapped by `WrapReturns`; its value is `!`.
            return exit;
        }
        let exit = ungroup(exit);
        if let Expr::Async(block) = &exit {
            return Expr::Verbatim((self.wrap)(Returned::Block(InnerFuture(block))));
        }
        if let Expr::Call(mut call) = exit {
            if is_box_pin(&call) {
                let arg = call.args.pop_pair().map(syn::punctuated::Pair::into_value);
                if let Some(arg) = arg {
                    let wrapped = match ungroup(arg) {
                        Expr::Async(block) => (self.wrap)(Returned::Block(InnerFuture(&block))),
                        other => (self.wrap)(Returned::Future(other.to_token_stream())),
                    };
                    call.args.push(Expr::Verbatim(wrapped));
                }
                return Expr::Call(call);
            }
            return self.wrap_other(Expr::Call(call), tail);
        }
        self.wrap_other(exit, tail)
    }

    /// Any other future-typed expression.
    fn wrap_other(&mut self, exit: Expr, tail: bool) -> Expr {
        if !self.func.boxed {
            return Expr::Verbatim((self.wrap)(Returned::Future(exit.to_token_stream())));
        }
        let ty = match &self.func.sig.output {
            ReturnType::Type(_, ty) => {
                let mut ty = (**ty).clone();
                EraseImplTrait.visit_type_mut(&mut ty);
                ty.to_token_stream()
            }
            ReturnType::Default => quote!(_),
        };
        let fut = Ident::new("__kinde_meter_returned", Span::mixed_site());
        let wrapped = (self.wrap)(Returned::Future(fut.to_token_stream()));
        // The `let` is where the value converts to the declared type (and gets it
        // inferred), as the function's return did; after a diverging value (`todo!()`),
        // the rest is unreachable. Clippy's `diverging_sub_expression` never looks at a
        // last expression, but does at a `let`: allowed there (only), so that it sees what
        // it saw before.
        let allow = tail.then(|| quote!(#[allow(unknown_lints, clippy::diverging_sub_expression)]));
        Expr::Verbatim(quote! {{
            #allow
            let #fut: #ty = #exit;
            #[allow(unreachable_code)]
            ::std::boxed::Box::pin(#wrapped)
        }})
    }
}

/// Wraps the value of every `return` that leaves the function, leaving alone what returns
/// from something else (closures, `async` blocks, `const` blocks, nested items).
struct WrapReturns<'e, 'a, 'w>(&'e mut Exits<'a, 'w>);

impl VisitMut for WrapReturns<'_, '_, '_> {
    fn visit_expr_mut(&mut self, expr: &mut Expr) {
        match expr {
            Expr::Closure(_) | Expr::Async(_) | Expr::Const(_) => {}
            Expr::Return(ret) => {
                if let Some(value) = &mut ret.expr {
                    self.visit_expr_mut(value);
                    let taken = std::mem::replace(&mut **value, Expr::Verbatim(TokenStream::new()));
                    **value = self.0.wrap_exit(taken, false);
                }
            }
            _ => visit_mut::visit_expr_mut(self, expr),
        }
    }

    fn visit_item_mut(&mut self, _: &mut Item) {}
}

/// The last expression of `block`, looking into a block that is itself the last
/// expression (as a stacked `#[meter]` leaves it); a trailing macro call counts.
fn tail_mut(block: &mut Block) -> Option<&mut Expr> {
    let last = block.stmts.last_mut()?;
    if let Stmt::Macro(m) = last
        && m.semi_token.is_none()
    {
        *last = Stmt::Expr(
            Expr::Macro(ExprMacro {
                attrs: std::mem::take(&mut m.attrs),
                mac: m.mac.clone(),
            }),
            None,
        );
    }
    let Stmt::Expr(expr, None) = last else {
        return None;
    };
    if matches!(expr, Expr::Block(inner) if inner.label.is_none() && inner.attrs.is_empty()) {
        let Expr::Block(inner) = expr else {
            return None;
        };
        return tail_mut(&mut inner.block);
    }
    Some(expr)
}

/// The last expression of `block`, as [`tail_mut`] finds it, looking through invisible
/// groups.
fn tail(block: &Block) -> Option<&Expr> {
    match block.stmts.last()? {
        Stmt::Expr(Expr::Block(inner), None) if inner.label.is_none() && inner.attrs.is_empty() => {
            tail(&inner.block)
        }
        Stmt::Expr(expr, None) => Some(ungroup_ref(expr)),
        _ => None,
    }
}

/// An expression without the invisible groups a `macro_rules!` fragment arrives in.
fn ungroup(expr: Expr) -> Expr {
    match expr {
        Expr::Group(group) => ungroup(*group.expr),
        other => other,
    }
}

fn ungroup_ref(expr: &Expr) -> &Expr {
    match expr {
        Expr::Group(group) => ungroup_ref(&group.expr),
        other => other,
    }
}

/// Whether `call` is `Box::pin(x)` (by any path ending in `Box::pin`).
fn is_box_pin(call: &ExprCall) -> bool {
    let Expr::Path(func) = ungroup_ref(&call.func) else {
        return false;
    };
    let mut names = func.path.segments.iter().rev().map(|s| &s.ident);
    call.args.len() == 1
        && names.next().is_some_and(|i| i == "pin")
        && names.next().is_some_and(|i| i == "Box")
}

/// The user's block, to nest as the last expression of the new body. Its braces are at
/// the user's braces but resolve as generated code: they are the macro's doing, so the
/// `unused_braces` lint must not ask the user to remove them (`fn f() -> u8 { 1 }` would
/// otherwise warn), while everything inside keeps the user's spans.
fn nested(block: Block) -> TokenStream {
    let span = block
        .brace_token
        .span
        .join()
        .resolved_at(Span::mixed_site());
    let stmts = &block.stmts;
    let mut tokens = TokenStream::new();
    token::Brace(span).surround(&mut tokens, |tokens| tokens.extend(quote!(#(#stmts)*)));
    tokens
}

/// Parses and classifies the item.
pub(crate) fn classify(item: TokenStream) -> syn::Result<MeterFn> {
    let item: Item = syn::parse2(item)?;
    let f = match item {
        Item::Fn(f) => f,
        Item::Verbatim(tokens) => return Err(verbatim_error(tokens)),
        other => return Err(not_a_function(&other)),
    };
    f.modifiers.require_empty()?;
    if let Some(const_token) = &f.sig.constness {
        return Err(syn::Error::new(
            const_token.span,
            "#[meter] cannot meter a `const fn`: it may run at compile time, where no usage \
             can be recorded; remove `const` or meter the functions that call it",
        ));
    }
    let (inner_attrs, outer_attrs) = f
        .attrs
        .into_iter()
        .partition(|a| matches!(a.style, AttrStyle::Inner(_)));
    let body = *f.block;
    let (shape, boxed) = if f.sig.asyncness.is_some() {
        (Shape::Async, false)
    } else {
        returns_future(&f.sig.output, &body)
            .map_or((Shape::Sync, false), |boxed| (Shape::ReturnsFuture, boxed))
    };
    let output = match (&f.sig.output, shape) {
        (ReturnType::Default, _) => Output::Unit,
        (ReturnType::Type(_, ty), Shape::ReturnsFuture) => future_output(ty),
        (ReturnType::Type(_, ty), _) => Output::Type(ty.clone()),
    };
    Ok(MeterFn {
        outer_attrs,
        inner_attrs,
        vis: f.vis,
        sig: f.sig,
        body,
        output,
        shape,
        boxed,
    })
}

/// Whether the function returns a future, and if so whether in a `Pin<Box<..>>`.
///
/// The macro sees tokens, not types, so this reads what is written: a return type that
/// says it is a future, else a last expression that builds one. A `Box::pin(..)` as the
/// last expression counts only under a return type the macro cannot read (an alias), so
/// that `-> Pin<Box<dyn Stream>>` stays a plain function.
fn returns_future(output: &ReturnType, body: &Block) -> Option<bool> {
    let ty = match output {
        ReturnType::Type(_, ty) => Some(ungroup_type(ty)),
        ReturnType::Default => None,
    };
    if let Some(boxed) = ty.and_then(future_type) {
        return Some(boxed);
    }
    let maybe_alias = ty.is_some_and(
        |ty| matches!(ty, Type::Path(p) if p.path.segments.last().is_none_or(|s| s.ident != "Pin")),
    );
    match tail(body)? {
        Expr::Async(_) => Some(false),
        Expr::Call(call) if is_box_pin(call) => {
            let builds_block = matches!(call.args.first().map(ungroup_ref), Some(Expr::Async(_)));
            (builds_block || maybe_alias).then_some(true)
        }
        _ => None,
    }
}

/// Whether a return type is written as a future: `Some(true)` for `Pin<Box<dyn Future<..>>>`
/// and the `futures` crate's `BoxFuture<..>` and `LocalBoxFuture<..>`, `Some(false)` for
/// `impl Future<..>`.
fn future_type(ty: &Type) -> Option<bool> {
    match ungroup_type(ty) {
        Type::ImplTrait(it) if bounds_future(it.bounds.iter()) => Some(false),
        Type::Path(p) if p.qself.is_none() => {
            let last = p.path.segments.last()?;
            if last.ident == "BoxFuture" || last.ident == "LocalBoxFuture" {
                return Some(true);
            }
            let is_pinned_box = last.ident == "Pin"
                && first_type_arg(&last.arguments).is_some_and(|inner| match ungroup_type(inner) {
                    Type::Path(b) => b.path.segments.last().is_some_and(|s| {
                        s.ident == "Box"
                            && first_type_arg(&s.arguments).is_some_and(|obj| {
                                matches!(ungroup_type(obj),
                                    Type::TraitObject(o) if bounds_future(o.bounds.iter()))
                            })
                    }),
                    _ => false,
                });
            is_pinned_box.then_some(true)
        }
        _ => None,
    }
}

/// Whether one of the bounds is `Future` (by any path ending in it).
fn bounds_future<'a>(mut bounds: impl Iterator<Item = &'a TypeParamBound>) -> bool {
    bounds.any(|b| {
        matches!(b, TypeParamBound::Trait(t)
            if t.path.segments.last().is_some_and(|s| s.ident == "Future"))
    })
}

/// The first type among generic arguments `<..>`.
fn first_type_arg(args: &PathArguments) -> Option<&Type> {
    let PathArguments::AngleBracketed(args) = args else {
        return None;
    };
    args.args.iter().find_map(|arg| match arg {
        syn::GenericArgument::Type(ty) => Some(ty),
        _ => None,
    })
}

/// A type without the invisible groups (and parentheses) a `macro_rules!` `ty` fragment
/// may arrive in.
fn ungroup_type(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => ungroup_type(&g.elem),
        Type::Paren(p) => ungroup_type(&p.elem),
        other => other,
    }
}

/// The `Output` of a returned future: the `Output = T` of `impl Future<Output = T>` or
/// `Pin<Box<dyn Future<Output = T>>>`, the `T` of `BoxFuture<'a, T>`.
fn future_output(ty: &Type) -> Output {
    let mut find = FindOutput(None);
    find.visit_type_mut(&mut ty.clone());
    if let Some(ty) = find.0 {
        return Output::Type(Box::new(ty));
    }
    if let Type::Path(p) = ungroup_type(ty)
        && let Some(last) = p.path.segments.last()
        && (last.ident == "BoxFuture" || last.ident == "LocalBoxFuture")
        && let Some(output) = first_type_arg(&last.arguments)
    {
        return Output::Type(Box::new(output.clone()));
    }
    Output::Unknown
}

/// Items syn does not model: a function without a body, `default fn`, and others.
fn verbatim_error(tokens: TokenStream) -> syn::Error {
    if let Ok(method) = syn::parse2::<TraitItemFn>(tokens.clone()) {
        if method.default.is_none() {
            let sig = &method.sig;
            let semi = method.semi_token;
            return syn::Error::new_spanned(
                quote!(#sig #semi),
                "#[meter] needs a function with a body: this method has none; put #[meter] \
                 on the method in the impl, which has a body",
            );
        }
        if let Err(e) = method.modifiers.require_empty() {
            return e;
        }
    }
    if let Ok(syn::ImplItem::Fn(method)) = syn::parse2::<syn::ImplItem>(tokens.clone())
        && let Err(e) = method.modifiers.require_empty()
    {
        return e;
    }
    let first = tokens.into_iter().next();
    syn::Error::new_spanned(first, ONLY_FUNCTIONS)
}

const ONLY_FUNCTIONS: &str = "#[meter] can only be applied to functions";

fn not_a_function(item: &Item) -> syn::Error {
    let (at, hint): (&dyn ToTokens, &str) = match item {
        Item::Impl(i) => (
            &i.impl_token,
            "; put it on each method of this impl that should be metered",
        ),
        Item::Trait(t) => (
            &t.trait_token,
            "; put it on the methods of the impls of this trait",
        ),
        Item::Struct(s) => (&s.struct_token, ""),
        Item::Enum(e) => (&e.enum_token, ""),
        Item::Union(u) => (&u.union_token, ""),
        Item::Mod(m) => (&m.mod_token, "; put it on the functions inside the module"),
        Item::Const(c) => (&c.const_token, ""),
        Item::Static(s) => (&s.static_token, ""),
        Item::Type(t) => (&t.type_token, ""),
        Item::TraitAlias(t) => (&t.trait_token, ""),
        Item::Use(u) => (&u.use_token, ""),
        Item::ExternCrate(e) => (&e.extern_token, ""),
        Item::ForeignMod(f) => (&f.abi, "; put it on the functions that call these"),
        Item::Macro(m) => (&m.mac.path, ""),
        other => (other, ""),
    };
    syn::Error::new_spanned(at, format!("{ONLY_FUNCTIONS}{hint}"))
}

/// Turns `return <e>` into `break 'label <e>`, leaving alone what returns from something
/// else (closures, `async` blocks, `const` blocks, nested items).
struct ReturnsToBreaks<'a> {
    label: &'a Lifetime,
    /// Whether a `return` was turned into a `break`.
    rewritten: bool,
}

impl VisitMut for ReturnsToBreaks<'_> {
    fn visit_expr_mut(&mut self, expr: &mut Expr) {
        match expr {
            Expr::Closure(_) | Expr::Async(_) | Expr::Const(_) => {}
            Expr::Return(ret) => {
                if let Some(value) = &mut ret.expr {
                    self.visit_expr_mut(value);
                }
                self.rewritten = true;
                *expr = Expr::Break(ExprBreak {
                    attrs: std::mem::take(&mut ret.attrs),
                    break_token: Token![break](ret.return_token.span),
                    label: Some(self.label.clone()),
                    expr: ret.expr.take(),
                });
            }
            _ => visit_mut::visit_expr_mut(self, expr),
        }
    }

    fn visit_item_mut(&mut self, _: &mut Item) {}
}

/// Replaces every `impl Trait` with `_`, nested generic arguments included.
struct EraseImplTrait;

impl VisitMut for EraseImplTrait {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(it) = ty {
            *ty = Type::Infer(TypeInfer {
                attrs: Vec::new(),
                underscore_token: Token![_](it.impl_token.span),
            });
        } else {
            visit_mut::visit_type_mut(self, ty);
        }
    }
}

/// Finds the first `Output = T` binding in a type.
struct FindOutput(Option<Type>);

impl VisitMut for FindOutput {
    fn visit_angle_bracketed_generic_arguments_mut(
        &mut self,
        args: &mut AngleBracketedGenericArguments,
    ) {
        if self.0.is_some() {
            return;
        }
        for arg in &args.args {
            if let syn::GenericArgument::AssocType(assoc) = arg
                && assoc.ident == "Output"
            {
                self.0 = Some(assoc.ty.clone());
                return;
            }
        }
        visit_mut::visit_angle_bracketed_generic_arguments_mut(self, args);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the function, and whether its future is boxed again.
    fn shape(item: TokenStream) -> (Shape, bool) {
        match classify(item) {
            Ok(f) => (f.shape, f.boxed),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn what_returns_a_future() {
        let boxed = (Shape::ReturnsFuture, true);
        let opaque = (Shape::ReturnsFuture, false);
        let sync = (Shape::Sync, false);
        // Said by the return type, whatever the body.
        assert_eq!(
            shape(quote!(
                fn f() -> impl Future<Output = u32> + Send {
                    g()
                }
            )),
            opaque
        );
        assert_eq!(
            shape(quote!(
                fn f() -> Pin<Box<dyn Future<Output = u32> + Send>> {
                    g()
                }
            )),
            boxed
        );
        assert_eq!(
            shape(quote!(
                fn f() -> ::core::pin::Pin<Box<dyn ::core::future::Future<Output = u32>>> {
                    g()
                }
            )),
            boxed
        );
        assert_eq!(
            shape(quote!(
                fn f() -> BoxFuture<'static, u32> {
                    g()
                }
            )),
            boxed
        );
        // Said by the last expression, under an alias.
        assert_eq!(
            shape(quote!(
                fn f() -> Job {
                    let x = g();
                    Box::pin(x)
                }
            )),
            boxed
        );
        assert_eq!(
            shape(quote!(
                fn f() -> Job {
                    Box::pin(async { 1 })
                }
            )),
            boxed
        );
        assert_eq!(
            shape(quote!(
                fn f() -> Job {
                    async { 1 }
                }
            )),
            opaque
        );
        // Not futures.
        assert_eq!(
            shape(quote!(
                fn f() -> Job {
                    g()
                }
            )),
            sync
        );
        assert_eq!(
            shape(quote!(
                fn f() -> Pin<Box<dyn Iterator<Item = u32>>> {
                    Box::pin(g())
                }
            )),
            sync
        );
        assert_eq!(
            shape(quote!(
                fn f() -> impl Iterator<Item = u32> {
                    g()
                }
            )),
            sync
        );
        assert_eq!(
            shape(quote!(
                async fn f() -> impl Future<Output = u32> {
                    g()
                }
            ))
            .0,
            Shape::Async
        );
    }

    #[test]
    fn a_return_type_from_a_macro_rules_fragment_is_read_through_its_group() {
        let ty = TokenStream::from(proc_macro2::TokenTree::Group(proc_macro2::Group::new(
            proc_macro2::Delimiter::None,
            quote!(Pin<Box<dyn Future<Output = u32>>>),
        )));
        assert_eq!(
            shape(quote!(fn f() -> #ty { g() })),
            (Shape::ReturnsFuture, true)
        );
    }
}

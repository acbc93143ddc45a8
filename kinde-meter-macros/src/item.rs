//! Classifies the item `#[meter]` is on: a sync fn, an `async fn`, a fn returning a future
//! it builds in its last expression, or something `#[meter]` cannot meter.
//!
//! Every dependency on the shape of syn's syntax tree lives here; the expansion only sees
//! token streams.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::visit_mut::{self, VisitMut};
use syn::{
    AngleBracketedGenericArguments, AttrStyle, Attribute, Block, Expr, ExprAsync, ExprBreak, Item,
    Lifetime, ReturnType, Signature, Stmt, Token, TraitItemFn, Type, TypeInfer, Visibility, token,
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
}

/// How the function runs its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A plain function: the body runs during the call.
    Sync,
    /// An `async fn`: the body runs when the returned future is polled.
    Async,
    /// A plain function whose last expression builds the future that does the work:
    /// `Box::pin(async move { .. })` (what `#[async_trait]` generates) or an `async`
    /// block. The inner future is metered, not the function.
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

/// The `async` block inside a [`Shape::ReturnsFuture`] body.
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

    /// The user's block with its last expression, which builds the future, replaced by
    /// `wrap(inner)` (for `Box::pin(async ..)`, only the argument of `Box::pin`).
    pub(crate) fn block_with_future(
        &self,
        wrap: impl FnOnce(InnerFuture<'_>) -> TokenStream,
    ) -> TokenStream {
        let mut block = self.body.clone();
        let inner = match self.body.stmts.last().and_then(future_tail) {
            Some(inner) => inner,
            // Classified as `ReturnsFuture` only when the tail is one.
            None => return nested(block),
        };
        let replacement = Expr::Verbatim(wrap(InnerFuture(inner)));
        if let Some(Stmt::Expr(tail, None)) = block.stmts.last_mut() {
            match tail {
                Expr::Call(call) => call.args = std::iter::once(replacement).collect(),
                other => *other = replacement,
            }
        }
        nested(block)
    }
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
    let shape = if f.sig.asyncness.is_some() {
        Shape::Async
    } else if body.stmts.last().and_then(future_tail).is_some() {
        Shape::ReturnsFuture
    } else {
        Shape::Sync
    };
    let output = match (&f.sig.output, shape) {
        (ReturnType::Default, _) => Output::Unit,
        (ReturnType::Type(_, ty), Shape::ReturnsFuture) => {
            // `-> Pin<Box<dyn Future<Output = T> + ..>>` or `-> impl Future<Output = T>`.
            let mut find = FindOutput(None);
            find.visit_type_mut(&mut ty.as_ref().clone());
            find.0
                .map_or(Output::Unknown, |ty| Output::Type(Box::new(ty)))
        }
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
    })
}

/// The `async` block a body's last statement evaluates to, if it is `async { .. }` or
/// `Box::pin(async { .. })`.
fn future_tail(stmt: &Stmt) -> Option<&ExprAsync> {
    let Stmt::Expr(expr, None) = stmt else {
        return None;
    };
    match expr {
        Expr::Async(block) => Some(block),
        Expr::Call(call) if call.args.len() == 1 => {
            let Expr::Path(func) = &*call.func else {
                return None;
            };
            let mut names = func.path.segments.iter().rev().map(|s| &s.ident);
            let is_box_pin = names.next().is_some_and(|i| i == "pin")
                && names.next().is_some_and(|i| i == "Box");
            match call.args.first() {
                Some(Expr::Async(block)) if is_box_pin => Some(block),
                _ => None,
            }
        }
        _ => None,
    }
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

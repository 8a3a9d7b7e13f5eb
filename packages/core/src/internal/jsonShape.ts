import type * as AST from "effect/SchemaAST"

/**
 * Why a schema's encoded side is not plain JSON, or `undefined` when it is.
 *
 * A payload is stored as JSON text, so what the schema encodes to must survive
 * `JSON.stringify` and `JSON.parse` unchanged: a `Date` would come back as a string,
 * a `bigint` or a symbol cannot be written, and `undefined` vanishes (harmless only
 * where the property is optional). Such a schema is refused when its registry is
 * made, rather than on every read of every event it wrote.
 *
 * What the AST cannot tell (`Schema.Unknown`, `Schema.Any`, `Schema.Object`) is
 * checked per append instead (see validate.ts: non-finite numbers, bigints).
 */
export const notJson = (ast: AST.AST): string | undefined => walk(ast, "payload", false, new Set())

// The original AST is walked, encoded side first, rather than AST.encodedAST's copy: a
// recursive schema's Suspend then leads back to itself, which `seen` stops.
const walk = (ast: AST.AST, path: string, undefinedAllowed: boolean, seen: Set<AST.AST>): string | undefined => {
  switch (ast._tag) {
    case "Declaration":
      return `${path} is encoded as ${String(ast)}, which is not JSON: choose a schema that encodes it to JSON (Schema.Date for a Date, Schema.Uint8ArrayFromBase64 for bytes)`
    case "BigIntKeyword":
      return `${path} is encoded as a bigint, which JSON cannot carry (Schema.BigInt encodes it as a string)`
    case "SymbolKeyword":
    case "UniqueSymbol":
      return `${path} is encoded as a symbol, which JSON cannot carry`
    case "UndefinedKeyword":
    case "VoidKeyword":
      return undefinedAllowed
        ? undefined
        : `${path} may be encoded as undefined, which JSON drops (make the property optional instead)`
    case "Literal":
      return typeof ast.literal === "bigint"
        ? `${path} is encoded as a bigint literal, which JSON cannot carry`
        : undefined
    case "Union":
      for (const member of ast.types) {
        const problem = walk(member, path, undefinedAllowed, seen)
        if (problem !== undefined) return problem
      }
      return undefined
    case "TupleType": {
      // In an array, undefined becomes null: never allowed.
      for (const [i, element] of ast.elements.entries()) {
        const problem = walk(element.type, `${path}[${i}]`, false, seen)
        if (problem !== undefined) return problem
      }
      for (const rest of ast.rest) {
        const problem = walk(rest.type, `${path}[]`, false, seen)
        if (problem !== undefined) return problem
      }
      return undefined
    }
    case "TypeLiteral": {
      for (const property of ast.propertySignatures) {
        if (typeof property.name !== "string") {
          return `${path} has the symbol key ${String(property.name)}, which JSON drops`
        }
        const problem = walk(property.type, `${path}.${property.name}`, property.isOptional, seen)
        if (problem !== undefined) return problem
      }
      for (const index of ast.indexSignatures) {
        if (index.parameter._tag === "SymbolKeyword") return `${path} has symbol keys, which JSON drops`
        // A record's undefined value drops its key, which a record reads back as absent.
        const problem = walk(index.type, `${path}[key]`, true, seen)
        if (problem !== undefined) return problem
      }
      return undefined
    }
    case "Suspend": {
      if (seen.has(ast)) return undefined
      seen.add(ast)
      return walk(ast.f(), path, undefinedAllowed, seen)
    }
    case "Refinement":
    case "Transformation":
      // The encoded side: what the payload is stored as.
      return walk(ast.from, path, undefinedAllowed, seen)
    default:
      return undefined
  }
}

const opaqueCache = new WeakMap<AST.AST, boolean>()

/**
 * Whether the encoded side lets some value through unchecked (`Schema.Unknown`,
 * `Schema.Any`, `Schema.Object`), so that a payload must be checked to be plain JSON
 * data on each append. Cached per schema.
 */
export const isOpaque = (ast: AST.AST): boolean => {
  let opaque = opaqueCache.get(ast)
  if (opaque === undefined) {
    opaque = findOpaque(ast, new Set())
    opaqueCache.set(ast, opaque)
  }
  return opaque
}

const findOpaque = (ast: AST.AST, seen: Set<AST.AST>): boolean => {
  switch (ast._tag) {
    case "UnknownKeyword":
    case "AnyKeyword":
    case "ObjectKeyword":
    case "Declaration":
      return true
    case "Union":
      return ast.types.some((member) => findOpaque(member, seen))
    case "TupleType":
      return (
        ast.elements.some((element) => findOpaque(element.type, seen)) ||
        ast.rest.some((rest) => findOpaque(rest.type, seen))
      )
    case "TypeLiteral":
      return (
        ast.propertySignatures.some((property) => findOpaque(property.type, seen)) ||
        ast.indexSignatures.some((index) => findOpaque(index.type, seen))
      )
    case "Suspend":
      if (seen.has(ast)) return false
      seen.add(ast)
      return findOpaque(ast.f(), seen)
    case "Refinement":
    case "Transformation":
      return findOpaque(ast.from, seen)
    default:
      return false
  }
}
